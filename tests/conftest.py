import os

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(int(os.environ.get("SDE_TEST_THREADS", "1")))

settings.register_profile("ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
