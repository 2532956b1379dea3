"""What the clinic records around a session and a course: adverse events
(:mod:`devicehub.clinical.adverse`) and the course verbs (:mod:`devicehub.clinical.course_verbs`).
The verbs' logic lives here; the MQTT pipeline and the console socket only wire them."""
