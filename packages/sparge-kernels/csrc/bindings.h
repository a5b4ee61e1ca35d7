// Each kernel family binds its Python entry points into sparge_kernels._C from its own bind_*.cpp file.
// module.cpp calls the ones that exist; a new family adds its one line there. Tensors cross as
// sparge::TensorArg through the one caster in common/tensor_caster.h.
#pragma once

#include <nanobind/nanobind.h>

void bind_attention_forward(nanobind::module_& m);   // csrc/forward/bind_forward.cpp
void bind_mask_prediction(nanobind::module_& m);     // csrc/mask/bind_mask.cpp
void bind_attention_backward(nanobind::module_& m);  // csrc/backward/bind_backward.cpp
void bind_stage_profile(nanobind::module_& m);       // csrc/profile/bind_stage_profile.cpp (SPARGE_PROFILE_STAGES)
