"""Flow-matching Euler samplers of TRELLIS.2 / Pixal3D (TRELLIS2_SPEC §4.1)."""
from .flow_euler import (FlowEulerCfgSampler, FlowEulerGuidanceIntervalSampler, FlowEulerSampler, SamplerOutput,
                         get_sampler, make_negative_cond, timestep_schedule)

__all__ = ["FlowEulerSampler", "FlowEulerCfgSampler", "FlowEulerGuidanceIntervalSampler", "SamplerOutput",
           "get_sampler", "make_negative_cond", "timestep_schedule"]
