"""The collector's database: schema, migrations, the store and its hot path, and the repositories.

No module outside this package writes SQL or imports SQLAlchemy: they call
the typed async functions the repositories here offer, passing the ``Store``.
"""
