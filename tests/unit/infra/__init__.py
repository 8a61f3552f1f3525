"""Static checks of the production stack in infra/ (Docker does not run on the CI machine)."""
