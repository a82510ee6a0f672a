"""Message templates: a sandboxed Jinja environment with a fixed set of merge fields.

A template naming a field we do not provide is rejected when it is saved (see
`validate_template`), not discovered when a customer's message fails to render.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from jinja2 import Template, StrictUndefined, TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

MERGE_FIELDS = frozenset({
    "first_name", "last_name", "vehicle", "shop_name", "shop_phone",
    "estimate_number", "estimate_total", "link",
})

OPT_OUT_TEXT = "Reply STOP to opt out."

_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, trim_blocks=True)


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class MessageTemplate:
    body: str
    subject: str | None = None  # email only


DEFAULT_TEMPLATES: dict[str, MessageTemplate] = {
    "first_sms": MessageTemplate(
        "Hi {{ first_name }}, thanks for choosing {{ shop_name }}! Your estimate "
        "#{{ estimate_number }} for the {{ vehicle }} is ready: {{ estimate_total }}. "
        "Questions or ready to book? Just reply here or call {{ shop_phone }}."
    ),
    "first_email": MessageTemplate(
        subject="Your estimate from {{ shop_name }} for the {{ vehicle }}",
        body=(
            "Hi {{ first_name }},\n\nThanks for stopping by {{ shop_name }}. Your estimate "
            "#{{ estimate_number }} for the {{ vehicle }} comes to {{ estimate_total }}.\n\n"
            "Reply to this email or call us at {{ shop_phone }} to approve the work or book a time.\n\n"
            "{{ shop_name }}"
        ),
    ),
    "followup_sms": MessageTemplate(
        "Hi {{ first_name }}, just checking in from {{ shop_name }} about estimate "
        "#{{ estimate_number }} for the {{ vehicle }}. Want us to get it scheduled? Reply or call {{ shop_phone }}."
    ),
    "followup_email": MessageTemplate(
        subject="Any questions about your {{ vehicle }} estimate?",
        body=(
            "Hi {{ first_name }},\n\nWe wanted to make sure you saw your estimate #{{ estimate_number }} "
            "({{ estimate_total }}) for the {{ vehicle }}. Happy to answer questions or find a time that "
            "suits you: reply here or call {{ shop_phone }}.\n\n{{ shop_name }}"
        ),
    ),
    "last_sms": MessageTemplate(
        "Hi {{ first_name }}, {{ shop_name }} here. Your estimate #{{ estimate_number }} is still on file "
        "whenever you're ready. We won't keep bugging you. Call {{ shop_phone }} anytime."
    ),
}


def validate_template(text: str) -> None:
    """Raises TemplateError for bad syntax or for fields we do not provide."""
    try:
        parsed = _env.parse(text)
        unknown = meta.find_undeclared_variables(parsed) - MERGE_FIELDS  # compiles: finds unknown filters
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from None
    if unknown:
        raise TemplateError(
            f"unknown merge field(s): {', '.join(sorted(unknown))}; "
            f"available: {', '.join(sorted(MERGE_FIELDS))}"
        )
    # A trial render catches what parsing cannot: attributes the sandbox refuses
    # ({{ first_name.__class__ }}), filters misused, undefined attributes.
    try:
        render(text, {name: "sample" for name in MERGE_FIELDS})
    except Exception as exc:  # noqa: BLE001 - any failure here would fail a customer's message
        raise TemplateError(f"template does not render: {exc}") from None


def fields_used(text: str) -> set[str]:
    """The merge fields a (valid) template names."""
    return set(meta.find_undeclared_variables(_env.parse(text)))


@lru_cache(maxsize=512)
def _compiled(text: str) -> Template:
    # Compiling a template costs ~1.5 ms; shops have a handful of templates.
    return _env.from_string(text)


def render(text: str, fields: dict[str, str]) -> str:
    return _compiled(text).render(**fields).strip()


def format_cents(cents: int | None) -> str:
    return "on request" if cents is None else f"${cents / 100:,.2f}"
