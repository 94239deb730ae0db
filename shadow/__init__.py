"""shadowzoo's live path: provider clients, gateway, capture, shadow runner and the LLM simulator."""
