"""The zoo's train driver: the built-in skill optimizer (SKILLOPT.md) and the external trainer hook.

Only the `train:` config models are imported here, so that `zoo.spec` can use them without
pulling in the loop; run training through `zoo.train.run.train_spec`.
"""

from zoo.train.train_config import ExternalTrainConfig, SkillOptConfig, TrainConfig, parse_train

__all__ = ["ExternalTrainConfig", "SkillOptConfig", "TrainConfig", "parse_train"]
