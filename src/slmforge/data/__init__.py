"""The data stage: read any supported format, validate, convert, split and describe data sets.

`containers` reads files into records, `formats` turns records into chat examples and writes
them, `validate` checks them with a registry of rules, `split` makes leak-free parts, `stats`
describes lengths, `templates` renders plain-text examples, and `sample` is slmforge's own
travel-assistant data set.
"""
