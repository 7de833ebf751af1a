"""Why residual nets train: the follow-up literature's probes, run on a finished study's runs.

One module per analysis, each named after its paper: `lesion` (Veit et al. 2016), `landscape`
(Li et al. 2018), `cka` (Kornblith et al. 2019), `gradients` (Balduzzi et al. 2017), `signal`
(Brock et al. 2021); `loading` brings a trained run's net and data back from MLflow, `summary`
holds the statistics over seeds and the drawing conventions, and `analyze` the orchestration
(units, resume, the JSON, logging to the study's parent run). `ablate analyze` is its command.
"""
