"""Install and update workflows: the leader walks hosts through their stages, in batches
under each workflow's rollout policy (see engine.py)."""

from appliance.workflow.engine import WorkflowEngine

__all__ = ["WorkflowEngine"]
