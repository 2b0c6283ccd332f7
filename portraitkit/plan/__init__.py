"""Will a run fit, and how long will it take? `estimate` answers from the real-size models'
graphs traced on the meta device (`tracing`) and the machines' budgets (`devices`); `figures`
draws where the memory goes. It reads the trainer's settings; the trainer decides."""

from portraitkit.plan.estimate import cpu_checkpointing, local_cuda_device, plan_for_training, plan_run

__all__ = ["cpu_checkpointing", "local_cuda_device", "plan_for_training", "plan_run"]
