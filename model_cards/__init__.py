"""The model-card templates hftl renders, installed as the package ``hftl.model_cards`` (see pyproject.toml).

A package, not a plain folder, so that an editable install finds it too; hftl/cards.py reads the
templates with ``importlib.resources.files("hftl.model_cards")``.
"""
