"""The extras, each imported only when its flag or command asks for it."""
