"""The CRM boundary and the layers, checked on the source with `ast` (no import runs):

- no CRM's JSON key is read (or written) outside its adapter in `lead_orchestrator/crm/`
  (the stand-ins play the CRMs and may): not as a subscript, a `.get()`/`.pop()`
  argument, an `in` test, a dict key, an attribute or a model field;
- `lead_orchestrator/domain` imports no I/O package;
- no package imports "upward": domain imports only domain, crm only crm and domain, and
  messaging only messaging and domain (and the settings and redaction every layer
  uses), store nothing of services, runtime or cli.

What is allowed anyway is listed in ALLOWED_KEYS / ALLOWED_IMPORTS with the reason; each
entry must still be needed (a stale one fails), so the lists only shrink.
"""
from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRODUCT = ("lead_orchestrator", "orchestrator_dagster", "webhook_receiver")
ADAPTERS = ("lead_orchestrator/crm/",)

# Keys only a CRM's JSON has, spelled as the CRM spells them (generic words such as
# "status" or "deleted" are left out: they name other things too).
CRM_KEYS = {
    "shopmonkey": {"phoneNumbers", "phoneNumberId", "emailId", "optIn", "subscribed", "generatedVehicleName",
                   "generatedCustomerName", "totalCostCents", "appointmentDates", "preferredContactMethod",
                   "marketingOptIn", "authorizedDate", "createdDate", "updatedDate", "customerId", "vehicleId",
                   "workflowStatusId", "locationId", "companyId", "companyName", "firstName", "lastName",
                   "submodel", "apiVersion"},
    "tekmetric": {"repairOrderStatus", "repairOrderStatusId", "repairOrderNumber", "repairOrderId", "okForMarketing",
                  "totalSales", "updatedDateStart", "deletedDateStart", "deletedDate", "appointmentStartTime",
                  "subModel", "totalPages", "totalElements", "shopId", "access_token"},
}

# (file, key) -> why it may stay.
ALLOWED_KEYS = {
    # The receiver's ShopMonkey route: its pydantic envelope check (models.py) and the
    # event it stores from the checked envelope (object id and version stamp), on the
    # hot path, without parsing the body twice through the adapter.
    ("webhook_receiver/models.py", "updatedDate"): "ShopMonkeyRow: the envelope check of the ShopMonkey route",
    ("webhook_receiver/models.py", "apiVersion"): "ShopMonkeyWebhook: the envelope check of the ShopMonkey route",
    ("webhook_receiver/routers/shopmonkey.py", "updatedDate"): "the ShopMonkey route keys the event by data.updatedDate",
    # `./dev run`'s demo drives the ShopMonkey stand-in through its own API (a stand-in
    # request, not a CRM answer the product reads).
    ("lead_orchestrator/runtime/stack.py", "firstName"): "demo: the customer it asks the stand-in to create",
    ("lead_orchestrator/runtime/stack.py", "lastName"): "demo: the customer it asks the stand-in to create",
}

IO_PACKAGES = {"psycopg", "psycopg_pool", "httpx", "dagster", "fastapi", "starlette", "twilio", "sendgrid",
               "requests", "socket", "urllib.request", "yoyo"}

# Which parts of the project a layer may import (None: any).
LAYERS = {
    "lead_orchestrator.domain": {"lead_orchestrator.domain"},
    "lead_orchestrator.crm": {"lead_orchestrator.crm", "lead_orchestrator.domain"},
    # Vendor adapters: Twilio and SendGrid I/O only, no tables, no use cases.
    "lead_orchestrator.messaging": {"lead_orchestrator.messaging", "lead_orchestrator.domain",
                                    "lead_orchestrator.settings", "lead_orchestrator.redaction"},
}
FORBIDDEN = {"lead_orchestrator.store": {"lead_orchestrator.services", "lead_orchestrator.runtime",
                                         "lead_orchestrator.cli"}}

# (importing module, imported module) -> why it may stay (each is a layering debt).
ALLOWED_IMPORTS: dict[tuple[str, str], str] = {}


def _sources(*packages: str) -> Iterator[tuple[str, ast.Module]]:
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(encoding="utf-8"), str(path))


def _keys_used(tree: ast.AST) -> Iterator[str]:
    """Every string a piece of code uses as a key or a field name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            yield node.slice.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("get", "pop", "setdefault") and node.args \
                and isinstance(node.args[0], ast.Constant):
            yield node.args[0].value
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) \
                and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            yield node.left.value
        elif isinstance(node, ast.Dict):
            yield from (k.value for k in node.keys if isinstance(k, ast.Constant))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
            yield from (k.arg for k in node.keywords if k.arg)
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, ast.ClassDef):  # model fields (pydantic, dataclasses)
            yield from (s.target.id for s in node.body if isinstance(s, ast.AnnAssign)
                        and isinstance(s.target, ast.Name))


def crm_key_uses(packages=PRODUCT) -> set[tuple[str, str]]:
    every_key = set().union(*CRM_KEYS.values())
    return {(path, key) for path, tree in _sources(*packages) if not path.startswith(ADAPTERS)
            for key in _keys_used(tree) if isinstance(key, str) and key in every_key}


def _module(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _imports(path: str, tree: ast.Module) -> Iterator[str]:
    package = _module(path) if path.endswith("__init__.py") else _module(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            yield base
            # `from lead_orchestrator.crm import registry` imports the module crm.registry
            yield from (f"{base}.{alias.name}" for alias in node.names if base.startswith("lead_orchestrator"))


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layering_breaks() -> set[tuple[str, str]]:
    breaks = set()
    for path, tree in _sources("lead_orchestrator"):
        module = _module(path)
        for imported in _imports(path, tree):
            if not _within(imported, "lead_orchestrator") or imported == "lead_orchestrator":
                continue
            for layer, allowed in LAYERS.items():
                if _within(module, layer) and not any(_within(imported, a) for a in allowed):
                    breaks.add((module, _owner(imported)))
            for layer, forbidden in FORBIDDEN.items():
                if _within(module, layer) and any(_within(imported, f) for f in forbidden):
                    breaks.add((module, _owner(imported)))
    return breaks


def _owner(imported: str) -> str:
    """`from a.b import C` names a.b.C: report the module a.b when C is not one."""
    path = ROOT / (imported.replace(".", "/") + ".py")
    return imported if path.exists() or (ROOT / imported.replace(".", "/")).is_dir() else imported.rpartition(".")[0]


def test_no_crm_key_outside_its_adapter():
    found = crm_key_uses()
    assert sorted(found - ALLOWED_KEYS.keys()) == []
    assert sorted(ALLOWED_KEYS.keys() - found) == [], "an allowance is no longer needed: remove it"


def test_the_key_check_can_fail():
    inside = {(p, k) for p, tree in _sources("lead_orchestrator/crm") for k in _keys_used(tree)}
    assert ("lead_orchestrator/crm/shopmonkey/mapping.py", "phoneNumbers") in inside
    assert ("lead_orchestrator/crm/tekmetric/mapping.py", "okForMarketing") in inside
    code = ast.parse('row.get("optIn"); x["totalCostCents"]; "generatedVehicleName" in o; {"okForMarketing": 1}\n'
                     "class M:\n    repairOrderStatus: int\n")
    assert set(_keys_used(code)) >= {"optIn", "totalCostCents", "generatedVehicleName", "okForMarketing",
                                     "repairOrderStatus"}


def test_the_domain_does_no_io():
    imports = {(path, name) for path, tree in _sources("lead_orchestrator/domain") for name in _imports(path, tree)
               if any(_within(name, io) for io in IO_PACKAGES)}
    assert sorted(imports) == []


def test_no_package_imports_upward():
    found = layering_breaks()
    assert sorted(found - ALLOWED_IMPORTS.keys()) == []
    assert sorted(ALLOWED_IMPORTS.keys() - found) == [], "an allowance is no longer needed: remove it"


def test_the_import_check_can_fail(tmp_path):
    tree = ast.parse("from lead_orchestrator.store.db import Database\nfrom . import contact_points\n"
                     "from ..crm import registry\n")
    names = set(_imports("lead_orchestrator/domain/example.py", tree))
    assert {"lead_orchestrator.store.db", "lead_orchestrator.domain.contact_points",
            "lead_orchestrator.crm.registry"} <= names
