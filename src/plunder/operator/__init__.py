"""kopf handlers only: thin glue from API events to the decisions in ``plunder.reconcile``."""
