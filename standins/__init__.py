"""Local stand-ins for the vendors the product talks to: ShopMonkey (API v3 + webhooks),
Twilio (Messages) and SendGrid (Mail Send v3 + Event Webhook).

Real HTTP servers that follow the vendors' contracts, for tests and the local demo stack:
`StandinServers` runs all three; `python -m standins` does so in the foreground.
"""
