"""The expert tools that generated programs call (Find, trim, Query_Actions, ...)."""
