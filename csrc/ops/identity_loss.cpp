#include "cpu/cpu_kernels.h"
#include "dispatch.h"
#include "ops.h"

namespace iafsr {

void identity_loss(const Buffer& f_sr, const Buffer& f_hr, const Buffer& cos_loss, const Buffer& mag_loss,
                   const Buffer& grad_cos, const Buffer& grad_mag, intptr_t stream) {
  const char* op = "identity_loss";
  check_rows(op, "f_sr", f_sr);
  check_rows(op, "f_hr", f_hr);
  check_same_shape(op, {"f_sr", &f_sr}, {"f_hr", &f_hr});
  check_same_dtype(op, {"f_sr", &f_sr}, {"f_hr", &f_hr});
  check_same_device(op, {{"f_sr", &f_sr}, {"f_hr", &f_hr}, {"cos_loss", &cos_loss}, {"mag_loss", &mag_loss},
                         {"grad_cos", &grad_cos}, {"grad_mag", &grad_mag}});
  check_output(op, "cos_loss", cos_loss, {f_sr.dim(0)}, DType::float32);
  check_output(op, "mag_loss", mag_loss, {f_sr.dim(0)}, DType::float32);
  check_output(op, "grad_cos", grad_cos, f_sr.shape, f_sr.dtype);
  check_output(op, "grad_mag", grad_mag, f_sr.shape, f_sr.dtype);
  check_no_overlap(op, {{"cos_loss", &cos_loss}, {"mag_loss", &mag_loss}, {"grad_cos", &grad_cos}, {"grad_mag", &grad_mag}},
                   {{"f_sr", &f_sr}, {"f_hr", &f_hr}});
  if (cos_loss.numel() == 0) return;
  if (on_host(f_sr))
    return cpu::identity_loss(f32(f_sr), f32(f_hr), f32_out(cos_loss), f32_out(mag_loss), f32_out(grad_cos),
                              f32_out(grad_mag), f_sr.dim(0), f_sr.dim(1));
  run_on_cuda(op, {{"f_sr", &f_sr}, {"f_hr", &f_hr}, {"cos_loss", &cos_loss}, {"mag_loss", &mag_loss},
                   {"grad_cos", &grad_cos}, {"grad_mag", &grad_mag}},
              stream, [&] {
#ifdef WITH_CUDA
                cuda::identity_loss(f_sr.dtype, f_sr.data, f_hr.data, f32_out(cos_loss), f32_out(mag_loss),
                                    grad_cos.data, grad_mag.data, f_sr.dim(0), f_sr.dim(1), stream);
#endif
              });
}

}  // namespace iafsr
