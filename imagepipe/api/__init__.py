"""The web tier: uploads, tickets, callbacks, photo serving, health."""
