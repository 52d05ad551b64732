"""The request path: authenticate -> preprocess -> route -> backend -> response."""
