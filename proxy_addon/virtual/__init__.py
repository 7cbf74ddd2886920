"""Apps that log in through the proxy: the virtual token grants and the logic of
the intercepted ``/restapi/oauth/*`` routes.
"""
