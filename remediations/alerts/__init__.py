"""From an Alertmanager notification to a remediation: the payload, the rules that map alerts to tasks
or runbooks on inventory hosts, and the offline rule tester (`inv alerts.test`). Like the runbooks,
this layer sits above the domains and reaches remediations only through the registry."""
