"""The policy engine: rules over requests and answers."""
