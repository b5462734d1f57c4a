"""Forgetting a user on request, everywhere the loop stored them (``forget``). Users are pseudonymous where they
enter (``components.data.pseudonyms``): this stage finds them by pseudonym and by post."""
