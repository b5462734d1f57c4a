"""Personal data kept to the minimum: pseudonymous users at every edge (``pseudonyms``), and forgetting a user
on request everywhere the loop stored them (``forget``)."""
