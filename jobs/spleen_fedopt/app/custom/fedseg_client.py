"""NVFlare client entry point copied into each job: the federated loop lives in fedseg.flare.client."""

from fedseg.flare.client import main

if __name__ == "__main__":
    main()
