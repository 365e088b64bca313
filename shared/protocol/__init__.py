"""The wire: what clients, internal services and gateways say to each other (DESIGN sections 3-6)."""
