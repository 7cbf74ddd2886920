"""The token lifecycle, free of mitmproxy and HTTP: token sets, each account's
generations, leases and drain, renewal, its schedule and the auth budget.
"""
