"""Where the model is built and the parallel plan applied to it, from outside the model's
code: `apply` builds it and applies every transformation in one fixed order (pipeline cut,
tensor-parallel slices, CAD's nano-batch rows under sequence parallelism, pool phantoms);
`tensor_parallel` and `pipeline_stage` hold the slicing and the pipeline stage; `pool_rank`
makes a weight-free CAD pool rank."""
