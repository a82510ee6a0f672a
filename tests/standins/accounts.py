"""Credentials the stand-in tests register once per session."""
TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "standin-auth-token"
SENDGRID_KEY = "SG.standin-test-key"
