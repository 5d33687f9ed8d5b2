"""`make bench`: every quick benchmark in one go (the fresh-clone `make test` timing is separate)."""

import chapters
import galore_vs_galore_torch
import lora_vs_peft
import method_steps
import pissa_init
import pretrain_command
import pretrain_steps
import step_scaling
import widget_latency
import widget_throughput

if __name__ == "__main__":
    lora_vs_peft.main()
    galore_vs_galore_torch.main()
    widget_latency.main()
    widget_throughput.main()
    method_steps.main()
    pissa_init.main()
    pretrain_steps.main()
    pretrain_command.main("ci", 60, 1)
    step_scaling.main()
    chapters.main("ci")
