# Question: Which object did the red circle touch?
# Possible answers: (A) The blue square. (B) The green triangle. (C) The yellow star. (D) The purple circle.
def execute_command(video_clip, query, possible_answers):
    clip = Filter_frames_with_act(video_clip, "red circle touches something")
    circle = Find(clip, "red circle")
    objs = Query_Objs(clip, "square/triangle/star/circle")
    info = {"red circle": circle, "objects touched": objs}
    answer = select_answer(query, possible_answers, info)
    return answer

# Question: What did the blue square do after the green triangle appeared?
# Possible answers: (A) Jumped. (B) Spun. (C) Disappeared. (D) Moved.
def execute_command(video_clip, query, possible_answers):
    appear = Filter_frames_with_act(video_clip, "green triangle appears")
    after = trim(video_clip, start=appear.end_frame)
    after = Filter_frames_with_obj(after, "blue square")
    acts = Query_Actions(after, "blue square", possible_answers)
    info = {"actions of the blue square after the triangle appeared": acts}
    answer = select_answer(query, possible_answers, info)
    return answer

# Question: What will the yellow star do next?
# Possible answers: (A) Jump. (B) Spin. (C) Disappear. (D) Touch the red circle.
def execute_command(video_clip, query, possible_answers):
    last = trim(video_clip, start=video_clip.end_frame - 8)
    star = Find(last, "yellow star")
    acts = Query_Actions(last, "yellow star", possible_answers)
    info = {"yellow star": star, "latest actions": acts}
    answer = select_answer(query, possible_answers, info)
    return answer

# Question: Which shape could the purple circle touch?
# Possible answers: (A) The red square. (B) The green star. (C) The blue triangle. (D) The yellow circle.
def execute_command(video_clip, query, possible_answers):
    present = [obj for obj in possible_answers if exist(video_clip, obj)]
    n = Count(video_clip, "purple circle")
    info = {"shapes present": present, "purple circles": n}
    answer = select_answer(query, possible_answers, info)
    return answer
