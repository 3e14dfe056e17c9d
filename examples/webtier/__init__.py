"""A toy web tier: signs people in, mints their grants, embeds the upload page."""
