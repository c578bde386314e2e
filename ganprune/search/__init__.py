"""Stage 3b: the search for widths: the agent protocol, budgets, the collaborative loop, the weight-sharing
supernet, finalists, and the one setup that assembles them."""
