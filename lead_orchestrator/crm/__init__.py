"""The CRM boundary: `base.py` is the port (protocol and domain objects), one package per
CRM adapts it (`tekmetric/`). Nothing outside an adapter reads a CRM's JSON."""
