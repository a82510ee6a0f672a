"""The CRM boundary: `base.py` is the port (protocol and change objects; the estimate,
customer and vehicle live in `domain/estimates.py`), one package per CRM adapts it
(`shopmonkey/`, `tekmetric/`), and `registry.py` picks a shop's adapter. Nothing outside
an adapter reads a CRM's JSON (tests/test_crm_boundary.py)."""
