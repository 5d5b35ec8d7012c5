"""The ModelDeployment API: spec and status types (pydantic), field types, validation
rules, constants, the operator's render configuration. Pure; imports no kopf, kubernetes
or aiohttp."""
