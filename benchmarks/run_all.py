"""`make bench`: every quick benchmark in one go (the fresh-clone `make test` timing is separate)."""

import chapters
import lora_vs_peft

if __name__ == "__main__":
    lora_vs_peft.main()
    chapters.main("ci")
