"""
Headless-Chromium drivers (standalone scripts) and the application their
test pages talk to; see README.md.
"""
