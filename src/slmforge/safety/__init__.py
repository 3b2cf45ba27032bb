"""Content safety: harm categories with severities 0-7, pluggable classifiers, filter policies.

`classifiers/` holds the classifier registry (blocklist, profanity, guard, azure, jailbreak),
`filter.py` turns a policy (`config/safety.py`) into the server's content filter, and
`scan.py` measures defect rates through `slmforge eval`.
"""
