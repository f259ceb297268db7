"""FHIR R4: CodeSystems, units, inbound parsing, facts, fetching and emitted resources."""
