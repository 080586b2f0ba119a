"""Storage: the tables, the engine, and the migrations that create them."""
