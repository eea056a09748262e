"""Head types: one folder each, found through :data:`headprobe.registry.HEAD_TYPES`.

A folder ``headprobe/heads/<name>/`` holds everything one head type adds to the generic
machinery: its scorer(s), task(s), data builders, head-type experiments, model organism, and
the tiny-model example with an exactly known answer; its ``__init__`` declares them in a
:class:`~headprobe.registry.HeadType` named ``HEAD_TYPE`` (strings only, so nothing is
imported until a name is looked up). Head types import the generic layers, never each other.
"""
