"""Equipment simulators for Cellgate: pure machine models and protocol servers that expose them."""
