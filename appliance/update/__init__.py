"""Signed A/B updates (RAUC-style, one module per concept).

Root only, except `status`: the web worker may import `appliance.update.status` and nothing else
from here (tests/web/test_imports.py checks it).
"""
