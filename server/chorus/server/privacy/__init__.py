"""Privacy accounting and mechanisms: exact epsilon, budgets, OpenDP noise."""
