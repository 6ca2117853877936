"""One module per optimizer family: the optimizer class, its rules (one per
variant and convention), their ``prepare`` and ``element`` functions in the
element language (:mod:`fastopt._codegen`) and the float64 reference.

Adding an optimizer is one family module plus one entry of :data:`FAMILIES`
(see the contributor guide, ``docs/adding-an-optimizer.md``).  Every backend
reads the registry (:data:`fastopt.rule.RULES`), in this order.
"""

#: The family modules, in registry order.  ``setup.py`` reads this tuple (by
#: parsing this file, never importing it) to render the Cython backend.
FAMILIES = ("sgd", "adagrad", "rmsprop", "adam", "adamax", "ftrl", "lion", "adadelta", "nadam",
            "asgd", "radam", "rprop", "adafactor", "muon", "schedulefree",
            "lamb")
