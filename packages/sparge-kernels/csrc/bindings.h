// Each kernel family binds its Python entry points into sparge_kernels._C from its own bind_*.cpp file.
// module.cpp calls the ones that exist; a new family adds its one line there.
#pragma once

#include <nanobind/nanobind.h>

void bind_attention_forward(nanobind::module_& m);   // csrc/forward/bind_forward.cpp
void bind_mask_prediction(nanobind::module_& m);     // csrc/mask/
void bind_attention_backward(nanobind::module_& m);  // csrc/backward/
