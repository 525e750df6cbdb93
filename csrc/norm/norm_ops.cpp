// The RMSNorm op family: schemas, and the functional forms that allocate their outputs and call
// the out-variants (which each device registers: cpu/, cuda/).
#include "norm/norm_checks.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace glm52::norm {
namespace {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_norm_input(x, weight, eps, kRmsNormOp);
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::rms_norm_out", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, double, at::Tensor&)>();
  op.call(x, weight, eps, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& residual,
                                                const at::Tensor& weight, double eps) {
  check_norm_input(x, weight, eps, kAddRmsNormOp);
  check_like_x(residual, x, kAddRmsNormOp, "residual");
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto sum = at::empty_like(x, at::MemoryFormat::Contiguous);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::add_rms_norm_out", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, at::Tensor&,
                                   at::Tensor&)>();
  op.call(x, residual, weight, eps, out, sum);
  return {out, sum};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(glm52, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("rms_norm_out(Tensor x, Tensor weight, float eps, *, Tensor(a!) out) -> ()");
  m.def("add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("add_rms_norm_out(Tensor x, Tensor residual, Tensor weight, float eps, *, Tensor(a!) out, "
        "Tensor(b!) sum) -> ()");
}

TORCH_LIBRARY_IMPL(glm52, CompositeExplicitAutograd, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("add_rms_norm", &add_rms_norm);
}

}  // namespace glm52::norm
