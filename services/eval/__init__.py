"""The eval service: suites run against a model version through the router; results in the database."""
