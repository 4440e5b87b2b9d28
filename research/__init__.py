"""Research code kept out of the installed ``diffsegmenter`` package (like diffusers' ``examples/``).

Run its modules from the repository root, e.g. ``python -m research.shapes.tune``; they import the library and
write their results to new folders, never into the installed package.
"""
