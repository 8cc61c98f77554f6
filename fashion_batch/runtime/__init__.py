"""Process-level plumbing shared by the jobs: joining or starting Ray, and the fault-injection
hooks the reliability tests drive."""
