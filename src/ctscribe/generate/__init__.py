"""The one generation engine behind predict, evaluate and serve, and the inputs it reads."""
