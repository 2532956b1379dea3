"""Treatment courses: the clinic's course plans (configs/courses/*.yaml), a patient's
enrolment (recorded, hash-chained, in the hub's store) and where a patient stands in it.

shared/mqtt-api.md "Adverse events and the course" is the contract; docs/programs.md
describes the plan files.
"""

from devicehub.course.plan import CoursePhase, CoursePlan, CoursePlans, load_plan

__all__ = ["CoursePhase", "CoursePlan", "CoursePlans", "load_plan"]
